"""Search strategies behind one protocol: agents propose plans, a driver evaluates them, agents observe."""
