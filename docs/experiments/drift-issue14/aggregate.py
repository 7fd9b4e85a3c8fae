"""Aggregate python -m training.drift outputs (drift_seed<k>.json) into one JSON + a table."""
import json, sys
from pathlib import Path
import numpy as np
out_dir = Path(sys.argv[1]); dest = Path(sys.argv[2]); command = sys.argv[3]
runs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("**/drift_seed*.json"))]
doc = {"command": command, "seeds": [r["seed"] for r in runs], "per_seed": {}, "mean": {}}
for r in runs:
    doc["per_seed"][str(r["seed"])] = {"by_protocol": r["by_protocol"], "threshold": r["threshold"],
        "knobs_unseen": r["knobs_unseen"], "calibration_alarms_per_1k": r["calibration_alarms_per_1k"],
        "unseen_calibration_alarms_per_1k": r["unseen_calibration_alarms_per_1k"], "timings": r["timings"],
        "n_cases": r["n_cases"]}
for view in runs[0]["by_protocol"]:
    doc["mean"][view] = {}
    for name in runs[0]["by_protocol"][view]:
        row = {}
        for key, v0 in runs[0]["by_protocol"][view][name].items():
            vals = [r["by_protocol"][view][name].get(key) for r in runs]
            vals = [v for v in vals if v is not None]
            if vals:
                row[key] = round(float(np.mean(vals)), 4)
                if key == "f1":
                    row["f1_min"], row["f1_max"] = round(min(vals), 4), round(max(vals), 4)
        doc["mean"][view][name] = row
dest.write_text(json.dumps(doc, indent=1))
for view, rows in doc["mean"].items():
    print(view)
    for name, row in rows.items():
        print(f"  {name:26s} f1 {row.get('f1', 0):.3f} ({row.get('f1_min', 0):.3f}-{row.get('f1_max', 0):.3f}) "
              f"P {row.get('precision', 0):.3f} R {row.get('recall', 0):.3f} delay {row.get('median_delay', '-')} "
              f"rate {row.get('alarms_per_1k', 0):.2f} kind {row.get('kind_accuracy', '-')}")
