"""Installed as the data package ``nasfpn.controller_settings`` (setup.cfg's package_dir), so
that a wheel carries these YAML files; ``nasfpn.controllers.CONTROLLER_DIR`` finds them. No code
here."""
