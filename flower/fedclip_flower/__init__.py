"""fedclip on Flower: a ServerApp that runs fedclip's strategy (the same sampling,
aggregation and server optimiser as `fedclip run`) and a ClientApp per silo that trains its
adapter with fedclip's engine on its own data and feature cache."""
