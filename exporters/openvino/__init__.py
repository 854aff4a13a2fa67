"""OpenVINO IR: export, the INT8 routes (shared Q/DQ graph, NNCF) and the runner."""
