"""The frontend process: three HTTP listeners over one data plane. Never imports torch."""
