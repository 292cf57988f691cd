"""memstage: aggregate spare RAM of many processes into a staging area for checkpoints.

This package holds what several roles share: settings, units, errors, the chunk model, the frame
codec of the data path, the generated gRPC stubs and the command line. The roles live in
memstage.manager, memstage.benefactor, memstage.client and memstage.drainer.
"""

__version__ = "0.1.0"
