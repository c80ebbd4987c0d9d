# Models arrive with this app's issue; the app is installed now so its first migration is clean.
