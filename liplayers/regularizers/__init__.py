"""Regularizers: Parseval, ISO (partial isometry), Jacobian, Fisher-spectrum."""
# --- Parseval penalty and retraction (issue 4): liplayers/regularizers/parseval.py ---
# --- ISO and Jacobian regularizers (issue 6): liplayers/regularizers/iso.py, jacobian.py ---
# --- Fisher spectrum (issue 9): liplayers/regularizers/fisher_spectrum.py ---
