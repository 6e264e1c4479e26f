"""What a run leaves behind: the store (`store`), the row schema (`schema`), the metric table (`metrics`) and
where a result came from (`provenance`)."""
