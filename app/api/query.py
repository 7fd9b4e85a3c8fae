"""Query strings: every parameter of the API takes one value.

A parameter given twice (`?before=x&before=y`) was read as its last value, so a request whose
first value is invalid was answered as if it were valid. It is a 422 naming the parameter.
"""

from __future__ import annotations

from fastapi import Request

from app.core.exceptions import InvalidInput, query_problem


async def single_valued_query(request: Request) -> None:
    params = request.query_params
    repeated = sorted({name for name in params if len(params.getlist(name)) > 1})
    if repeated:
        raise InvalidInput([query_problem(name, f"{name} given more than once", "repeated")
                            for name in repeated])
