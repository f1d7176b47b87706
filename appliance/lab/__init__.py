"""Throwaway servers and network-namespace topologies for the demo and the tests."""
