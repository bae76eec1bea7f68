"""absl binaries, one per command. Only this package reads flags."""
