"""The fedimdb ClientApp (runs inside each SuperNode)."""
