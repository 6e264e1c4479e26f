"""Running cells: planning a sweep (`sweep`), one cell from data to rows (`cell`, `data`, `train`, `evaluate`),
where cells run (`launchers`), and the tools around them (`status`, `grid`, `sizing`)."""
