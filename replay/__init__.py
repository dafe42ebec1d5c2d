"""Stage 2 of the flow: re-run venues' liquidation rules over the lake's recorded events."""
