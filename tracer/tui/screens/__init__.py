"""Screens: the trace screen (coordinates the widgets), help, and small dialogs."""
