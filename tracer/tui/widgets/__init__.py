"""Widgets of the step-through UI; each draws what the screen hands it and posts what the user did."""
