"""``python -m webui``: start the server (the venv must already be set up; see launch.py)."""

from webui.main import main

if __name__ == "__main__":
    main()
