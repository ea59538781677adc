"""Imported by instrumented programs: recorder, trace writer, meta state. Never imports torch itself."""
