"""The daemon's API inventory: route tables from the configuration, the live inventory of its calls."""
