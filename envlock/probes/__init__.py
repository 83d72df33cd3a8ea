"""One module per concern: `collect_x()` reads the machine (small, side-effecting); `parse_x(raw)` is pure."""
