"""The stages a rule file's `pipeline` names, one module each."""
