"""Building blocks shared by the vision towers, the LMs and the Flamingo bridge."""
