"""Everything that talks to the ISIC archive and the challenge data, plus a local emulator of the archive."""
