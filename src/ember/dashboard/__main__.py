from ember.dashboard.main import main

main()
