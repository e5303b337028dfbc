"""Thin Ray shells around the core in `kairos/`. The classes here are plain classes;
`actors.deploy` is the one place that wraps them with `ray.remote`."""
