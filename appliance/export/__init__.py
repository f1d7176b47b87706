"""Exports of the trail: JSONL (verifiable), OCSF, CEF and pcap, once or as a continuous forward."""
