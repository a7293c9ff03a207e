"""Jobs: the IO workflows that entry points run (evaluation, forget, batch, materialize, log
import, training sets, the bytewax launcher) and the composition root of serving.

A job wires adapters to the application layer, does its work and returns a typed report; the
CLI and the HTTP server parse their input, call a job and print what it returns.
"""
