from ember.autoscaler.main import main

main()
