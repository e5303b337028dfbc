"""Kairos: a real-time customer engagement platform on Ray.

The `kairos` package is the plain-Python core. Apart from the start-up code
(`runtime`, `cli`), nothing in it imports Ray, so unit tests drive it directly.
"""

__version__ = "0.1.0"
