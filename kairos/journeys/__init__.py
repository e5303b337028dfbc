"""Journeys: multi-step customer journeys, run by journey actors (see kairos.journeys.engine)."""
