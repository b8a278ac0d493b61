"""Everything that speaks SQL. Routers and the pipeline call these modules; nothing else holds SQL."""
