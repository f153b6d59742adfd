"""The FluxKart Identity benchmark (not imported by the service). Run: .venv/bin/python bench/run.py"""
