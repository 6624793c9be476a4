"""One module of logic per workflow state; handlers in functions/<step>/app.py call these."""
