# The package version; equals AF_VERSION_STRING of the library it bundles (a test checks this).
__version__ = "0.1.0"
