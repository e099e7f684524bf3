"""Installed as the data package ``nasfpn.search_configs`` (setup.cfg's package_dir), so that a
wheel carries these YAML files; ``nasfpn.search.config.CONFIG_DIR`` finds them. No code here."""
