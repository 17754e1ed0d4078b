"""The request edge: bodies on the wire, origins, errors, display names, authentication."""
