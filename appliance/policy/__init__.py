"""Decisions about connections and commands: who may connect where."""
