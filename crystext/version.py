"""crystext's version, in a module of its own so any layer can read it without importing the
package facade (:mod:`crystext`), which sits above everything."""

__version__ = "0.1.0"
