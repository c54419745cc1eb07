"""Choosing the model: the catalogue, what is on this machine, downloads, `bots model use`."""
