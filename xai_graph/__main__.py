"""`python -m xai_graph`: the `xai-graph` command."""

from xai_graph.cli.main import main

main(prog_name="xai-graph")
