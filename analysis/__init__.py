"""Stage 3 of the flow: SQL forensics, the timeline, attribution, charts and reports."""
