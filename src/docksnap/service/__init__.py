"""Orchestration: the public Client, Container and catalogue, over the Docker and store seams."""

from docksnap.service.catalogue import Catalogue
from docksnap.service.client import Client
from docksnap.service.container import Container

__all__ = ["Catalogue", "Client", "Container"]
