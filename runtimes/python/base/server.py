# eserveless: HTTP wrapper. `python3 server.py NAME` serves the object functions.py
# exports as NAME on $ESERVELESS_SOCKET and 0.0.0.0:$PORT; see eserveless_http.py.
# This stub stays tiny: the main script is the one file python never caches as .pyc.
import eserveless_http

eserveless_http.main()
