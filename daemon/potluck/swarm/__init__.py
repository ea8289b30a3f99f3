"""The swarm: hivemind's DHT and p2pd, signed peer records, and who is online."""
