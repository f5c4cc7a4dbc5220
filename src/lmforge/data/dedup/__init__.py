"""Dedup stages: each runs in phases (per shard, then across shards) that exchange small files on disk."""
