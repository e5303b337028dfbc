"""Exact analytics over the live shards: trends, funnels, retention and RFM."""
