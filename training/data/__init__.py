"""Datasets: fetching MovieLens-100k and turning interactions into model inputs."""
