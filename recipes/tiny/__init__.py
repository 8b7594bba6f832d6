"""The bundled tiny model: its training curriculum, build scripts and probes."""
