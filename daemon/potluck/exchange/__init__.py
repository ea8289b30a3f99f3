"""Update exchange: announce held updates in the DHT, serve their bytes over libp2p, fetch others'."""
