"""Chat file attachments with HTTP left out: what the upload, download and delete routes and the jobs call.

As Zulip's ``zerver/lib/upload/``: the routes (blueprints/files.py) parse the
request and shape the response; what happens to an attachment in between is
here, one concern a module:

- budget: the bytes of upload bodies one worker decodes at once;
- decode: an upload verified and its variants made, in a sandbox, within that budget;
- store: saving and deleting an attachment, its objects and rows in the order that keeps them consistent;
- objects: its objects in the store (variants put, bytes opened, all of it deleted);
- rows: its rows and their SQL.

Where an object lives is the store's to say (storage.ObjectStore.original_key,
variant_key). What a client is told when something fails is an ApiError
carrying the contract's message, raised here so every caller answers alike.
"""
