"""The synthetic world of the embedded default: procedural road scenes written in the exact NATIX schema.

`sprites` draws objects (roadwork objects, look-alike distractors, scenery) and records their polygons,
`scene` composes a road scene from them under a weather, daytime and environment, and `dataset` turns
scenes into the NATIX-schema parquet shards the real ingest reads (plus the true-polygon side table).
Nothing under `roadwork/data` imports this package: a real run never touches it.
"""
