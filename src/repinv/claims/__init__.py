"""Does the study reproduce? Its claims, the rules that judge them, and the ledger that runs them."""
