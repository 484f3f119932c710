"""The fedimdb ServerApp (runs beside the SuperLink)."""
