"""groma_core: a framework-free re-implementation of Groma (arXiv 2404.13013).

No ROS imports live here; ``groma_ros`` builds on this package, never the reverse.
"""

__version__ = "0.1.0"
